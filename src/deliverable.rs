//! What a producer wants delivered: the audio's container and codec, its
//! sample rate and bitrate, a loudness target, and caption files. Valid by
//! construction: [`Deliverable::new`] refuses the combinations a codec cannot
//! do, naming the field. Pure; imports nothing of the crate.
//!
//! Without any of these fields a job gets what Segmind served, as WAV
//! ([`Deliverable::is_passthrough`]).

use std::fmt;

/// The rate of Gemini's audio, which every part is in.
pub const SOURCE_RATE: u32 = 24_000;

/// The sample rates the worker can write, by format.
const PCM_RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];
/// MPEG-1/2/2.5 Layer III rates (what LAME writes).
const MP3_RATES: [u32; 9] = PCM_RATES;
/// Opus codes only these.
const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// G.711 is 8 kHz.
const MULAW_RATES: [u32; 1] = [8_000];

/// Integrated loudness targets the worker accepts (LUFS).
pub const LOUDNESS_RANGE: std::ops::RangeInclusive<f64> = -36.0..=-6.0;
/// True-peak ceilings it accepts (dBTP).
pub const TRUE_PEAK_RANGE: std::ops::RangeInclusive<f64> = -9.0..=0.0;
pub const DEFAULT_TRUE_PEAK_DB: f64 = -1.0;

/// The container and codec of the delivered audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// 16-bit PCM in WAV.
    Wav,
    /// MPEG Layer III (LAME).
    Mp3,
    /// Opus in Ogg.
    Ogg,
    /// FLAC, 16-bit.
    Flac,
    /// G.711 μ-law in WAV (format tag 7), 8 kHz, for telephony.
    Mulaw,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Wav,
        Format::Mp3,
        Format::Ogg,
        Format::Flac,
        Format::Mulaw,
    ];

    /// The spelling producers use.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
            Format::Flac => "flac",
            Format::Mulaw => "mulaw",
        }
    }

    pub fn parse(input: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(input.trim()))
    }

    /// The file name extension of the object (μ-law is a WAV file).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Wav | Format::Mulaw => "wav",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
            Format::Flac => "flac",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Wav | Format::Mulaw => "audio/wav",
            Format::Mp3 => "audio/mpeg",
            Format::Ogg => "audio/ogg",
            Format::Flac => "audio/flac",
        }
    }

    /// The sample rates it can be written at.
    pub fn rates(self) -> &'static [u32] {
        match self {
            Format::Wav | Format::Flac => &PCM_RATES,
            Format::Mp3 => &MP3_RATES,
            Format::Ogg => &OPUS_RATES,
            Format::Mulaw => &MULAW_RATES,
        }
    }

    /// The rate used when the producer names none.
    pub fn default_rate(self) -> u32 {
        match self {
            Format::Mulaw => 8_000,
            _ => SOURCE_RATE,
        }
    }

    /// Bitrates (kbit/s) a producer may ask for at `rate` Hz, or `None`
    /// when the format has no bitrate to choose.
    pub fn bitrates(self, rate: u32) -> Option<&'static [u32]> {
        match self {
            // LAME's CBR rates: MPEG-1 (32–48 kHz), MPEG-2/2.5 below.
            Format::Mp3 if rate >= 32_000 => Some(&[
                32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
            ]),
            Format::Mp3 => Some(&[8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]),
            // Opus: 6–510 kbit/s for mono; these are the steps offered.
            Format::Ogg => Some(&[
                6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256,
            ]),
            _ => None,
        }
    }

    /// The bitrate used when the producer names none: transparent for
    /// speech at the rate, small enough for the web.
    pub fn default_bitrate(self, rate: u32) -> Option<u32> {
        match self {
            Format::Mp3 if rate >= 32_000 => Some(64),
            Format::Mp3 if rate >= 16_000 => Some(48),
            Format::Mp3 => Some(24),
            Format::Ogg if rate >= 16_000 => Some(32),
            Format::Ogg => Some(16),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A caption file written beside the audio.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CaptionFormat {
    Vtt,
    Srt,
}

impl CaptionFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptionFormat::Vtt => "vtt",
            CaptionFormat::Srt => "srt",
        }
    }

    pub fn parse(input: &str) -> Option<CaptionFormat> {
        match input.trim().to_ascii_lowercase().as_str() {
            "vtt" | "webvtt" => Some(CaptionFormat::Vtt),
            "srt" => Some(CaptionFormat::Srt),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            CaptionFormat::Vtt => "text/vtt",
            CaptionFormat::Srt => "application/x-subrip",
        }
    }
}

/// An integrated loudness target and the true-peak ceiling that bounds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoudnessTarget {
    /// Integrated loudness, LUFS (EBU R128 / ITU-R BS.1770).
    pub lufs: f64,
    /// Ceiling for the true peak, dBTP.
    pub true_peak_db: f64,
}

/// What the producer asked for, as given (the wire's fields, parsed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asked {
    pub format: Option<String>,
    pub sample_rate: Option<u32>,
    pub bitrate_kbps: Option<u32>,
    pub loudness_lufs: Option<f64>,
    pub true_peak_db: Option<f64>,
    pub captions: Option<Vec<String>>,
}

/// A rule an [`Asked`] broke: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: &'static str,
    pub message: String,
}

/// The delivered audio, fully resolved: every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Deliverable {
    pub format: Format,
    pub sample_rate: u32,
    pub bitrate_kbps: Option<u32>,
    pub loudness: Option<LoudnessTarget>,
    /// Distinct, in a stable order.
    pub captions: Vec<CaptionFormat>,
}

impl Default for Deliverable {
    fn default() -> Self {
        Deliverable {
            format: Format::Wav,
            sample_rate: SOURCE_RATE,
            bitrate_kbps: None,
            loudness: None,
            captions: Vec::new(),
        }
    }
}

impl Deliverable {
    /// Resolves what was asked; every broken rule is reported.
    pub fn new(asked: &Asked) -> Result<Deliverable, Vec<Refusal>> {
        let mut refusals = Vec::new();
        let mut refuse =
            |field: &'static str, message: String| refusals.push(Refusal { field, message });
        let format = match asked.format.as_deref() {
            None => Format::Wav,
            Some(f) => Format::parse(f).unwrap_or_else(|| {
                refuse(
                    "format",
                    format!("unknown format {f:?}; one of wav, mp3, ogg, flac, mulaw"),
                );
                Format::Wav
            }),
        };
        let sample_rate = asked.sample_rate.unwrap_or(format.default_rate());
        if !format.rates().contains(&sample_rate) {
            refuse(
                "sample_rate",
                format!(
                    "{format} cannot be written at {sample_rate} Hz; allowed: {}",
                    list(format.rates())
                ),
            );
        }
        let bitrate_kbps = match (asked.bitrate_kbps, format.bitrates(sample_rate)) {
            (None, _) => format.default_bitrate(sample_rate),
            (Some(b), None) => {
                refuse(
                    "bitrate_kbps",
                    format!(
                        "{format} has no bitrate to choose (asked {b} kbit/s); only mp3 and ogg do"
                    ),
                );
                None
            }
            (Some(b), Some(allowed)) if !allowed.contains(&b) => {
                refuse(
                    "bitrate_kbps",
                    format!(
                        "{format} at {sample_rate} Hz cannot be coded at {b} kbit/s; allowed: {}",
                        list(allowed)
                    ),
                );
                None
            }
            (Some(b), Some(_)) => Some(b),
        };
        let loudness = match (asked.loudness_lufs, asked.true_peak_db) {
            (None, None) => None,
            (None, Some(_)) => {
                refuse(
                    "true_peak_db",
                    "a true-peak ceiling applies with a loudness target: give loudness_lufs too"
                        .into(),
                );
                None
            }
            (Some(lufs), peak) => {
                let true_peak_db = peak.unwrap_or(DEFAULT_TRUE_PEAK_DB);
                if !lufs.is_finite() || !LOUDNESS_RANGE.contains(&lufs) {
                    refuse(
                        "loudness_lufs",
                        format!(
                            "{lufs} LUFS is outside {} to {} LUFS",
                            LOUDNESS_RANGE.start(),
                            LOUDNESS_RANGE.end()
                        ),
                    );
                }
                if !true_peak_db.is_finite() || !TRUE_PEAK_RANGE.contains(&true_peak_db) {
                    refuse(
                        "true_peak_db",
                        format!(
                            "{true_peak_db} dBTP is outside {} to {} dBTP",
                            TRUE_PEAK_RANGE.start(),
                            TRUE_PEAK_RANGE.end()
                        ),
                    );
                }
                Some(LoudnessTarget { lufs, true_peak_db })
            }
        };
        let mut captions = Vec::new();
        for c in asked.captions.iter().flatten() {
            match CaptionFormat::parse(c) {
                Some(f) if !captions.contains(&f) => captions.push(f),
                Some(_) => {}
                None => refuse(
                    "captions",
                    format!("unknown caption format {c:?}; vtt or srt"),
                ),
            }
        }
        captions.sort();
        if refusals.is_empty() {
            Ok(Deliverable {
                format,
                sample_rate,
                bitrate_kbps,
                loudness,
                captions,
            })
        } else {
            Err(refusals)
        }
    }

    /// Whether the audio is delivered as Segmind served it (today's WAV).
    pub fn is_passthrough(&self) -> bool {
        self.format == Format::Wav
            && self.sample_rate == SOURCE_RATE
            && self.loudness.is_none()
            && self.captions.is_empty()
    }

    /// A canonical description: two deliverables are the same exactly when
    /// their fingerprints are (a replay with other options is another
    /// deliverable).
    pub fn fingerprint(&self) -> String {
        let mut s = format!("{}@{}", self.format, self.sample_rate);
        if let Some(b) = self.bitrate_kbps {
            s.push_str(&format!("/{b}k"));
        }
        if let Some(l) = self.loudness {
            s.push_str(&format!("/{}LUFS/{}dBTP", l.lufs, l.true_peak_db));
        }
        for c in &self.captions {
            s.push('+');
            s.push_str(c.as_str());
        }
        s
    }
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(format: &str) -> Asked {
        Asked {
            format: Some(format.into()),
            ..Asked::default()
        }
    }

    fn fields(r: Result<Deliverable, Vec<Refusal>>) -> Vec<&'static str> {
        r.expect_err("refused").iter().map(|r| r.field).collect()
    }

    #[test]
    fn nothing_asked_is_todays_wav() {
        let d = Deliverable::new(&Asked::default()).expect("valid");
        assert!(d.is_passthrough());
        assert_eq!(d, Deliverable::default());
    }

    #[test]
    fn defaults_follow_the_format() {
        let mp3 = Deliverable::new(&asked("MP3")).expect("valid");
        assert_eq!((mp3.sample_rate, mp3.bitrate_kbps), (24_000, Some(48)));
        let mulaw = Deliverable::new(&asked("mulaw")).expect("valid");
        assert_eq!((mulaw.sample_rate, mulaw.bitrate_kbps), (8_000, None));
        let ogg = Deliverable::new(&asked("ogg")).expect("valid");
        assert_eq!(ogg.bitrate_kbps, Some(32));
        assert!(!mp3.is_passthrough());
    }

    #[test]
    fn combinations_a_codec_cannot_do_name_their_field() {
        let mut a = asked("mulaw");
        a.sample_rate = Some(44_100);
        assert_eq!(fields(Deliverable::new(&a)), ["sample_rate"]);
        let mut a = asked("ogg");
        a.sample_rate = Some(44_100);
        assert_eq!(fields(Deliverable::new(&a)), ["sample_rate"]);
        let mut a = asked("mp3");
        a.sample_rate = Some(48_000);
        a.bitrate_kbps = Some(16);
        assert_eq!(fields(Deliverable::new(&a)), ["bitrate_kbps"]);
        let mut a = asked("flac");
        a.bitrate_kbps = Some(64);
        assert_eq!(fields(Deliverable::new(&a)), ["bitrate_kbps"]);
        assert_eq!(fields(Deliverable::new(&asked("aac"))), ["format"]);
        let a = Asked {
            true_peak_db: Some(-2.0),
            ..Asked::default()
        };
        assert_eq!(fields(Deliverable::new(&a)), ["true_peak_db"]);
        let a = Asked {
            loudness_lufs: Some(-3.0),
            true_peak_db: Some(1.0),
            captions: Some(vec!["ass".into()]),
            ..Asked::default()
        };
        assert_eq!(
            fields(Deliverable::new(&a)),
            ["loudness_lufs", "true_peak_db", "captions"]
        );
    }

    #[test]
    fn other_options_are_another_deliverable() {
        let a = Deliverable::new(&asked("mp3")).expect("valid");
        let mut b = asked("mp3");
        b.bitrate_kbps = Some(64);
        let b = Deliverable::new(&b).expect("valid");
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = Asked {
            captions: Some(vec!["srt".into(), "vtt".into(), "VTT".into()]),
            ..Asked::default()
        };
        let c = Deliverable::new(&c).expect("valid");
        assert_eq!(c.captions, [CaptionFormat::Vtt, CaptionFormat::Srt]);
        assert!(!c.is_passthrough());
        assert_ne!(c.fingerprint(), Deliverable::default().fingerprint());
    }
}
