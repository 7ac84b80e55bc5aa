//! 16-bit PCM, the form every take is checked and stitched in: its format,
//! its WAV container (read with [`parse_wav`], written with the one header
//! writer [`wav_header`]) and where the speech is in it ([`speech_bounds`]).
//!
//! Pure; it imports nothing of the crate.

use std::ops::Range;
use std::time::Duration;

/// The PCM format of Gemini's audio and of every intermediate part: 16-bit
/// little-endian, mono, 24 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

impl PcmFormat {
    /// What Gemini serves (the tests' usual format).
    #[cfg(test)]
    pub const GEMINI: PcmFormat = PcmFormat {
        sample_rate: 24_000,
        channels: 1,
    };

    /// Bytes of one sample frame (every channel, 16 bits each).
    pub fn frame_bytes(self) -> u64 {
        2 * u64::from(self.channels)
    }

    /// Frames in `d`, rounded down.
    pub fn frames_in(self, d: Duration) -> u64 {
        (d.as_secs_f64() * f64::from(self.sample_rate)) as u64
    }
}

/// The sample rates audio from upstream may have: telephony's 8 kHz to
/// 48 kHz (Gemini serves 24 kHz). A header claiming another rate is refused
/// before anything is sized by it (a resampler, a buffer, a duration).
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;
/// Mono or stereo.
pub const MAX_CHANNELS: u16 = 2;

impl PcmFormat {
    /// `Ok` for a rate in [`SAMPLE_RATES`] and one or two channels.
    pub fn supported(self) -> Result<Self, WavError> {
        if SAMPLE_RATES.contains(&self.sample_rate) && (1..=MAX_CHANNELS).contains(&self.channels) {
            Ok(self)
        } else {
            Err(WavError::Unsupported {
                sample_rate: self.sample_rate,
                channels: self.channels,
            })
        }
    }
}

/// Why a part's audio cannot be stitched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWav,
    #[error("the WAV file has no fmt chunk before its data")]
    NoFormat,
    #[error("the WAV file is not 16-bit PCM (format {format}, {bits} bits)")]
    NotPcm16 { format: u16, bits: u16 },
    #[error("{data_bytes} bytes of samples do not fit a WAV header (4 GiB at most)")]
    TooLong { data_bytes: u64 },
    #[error("the WAV file has no data chunk")]
    NoData,
    #[error(
        "the audio claims {sample_rate} Hz and {channels} channel(s): 8-48 kHz, mono or stereo are accepted"
    )]
    Unsupported { sample_rate: u32, channels: u16 },
}

/// A PCM WAV file's format and where its samples are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    pub format: PcmFormat,
    /// Byte range of the samples, clipped to what the file holds (a
    /// streamed WAV may announce more).
    pub data: Range<usize>,
}

/// Reads a 16-bit PCM WAV file's header.
pub fn parse_wav(bytes: &[u8]) -> Result<Wav, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut pos = 12;
    let mut format = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        match id {
            b"fmt " if size >= 16 && body + 16 <= bytes.len() => {
                let u16_at = |i: usize| u16::from_le_bytes([bytes[body + i], bytes[body + i + 1]]);
                let tag = u16_at(0);
                let bits = u16_at(14);
                // 1 = PCM; 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM sub-format assumed).
                if !(tag == 1 || tag == 0xFFFE) || bits != 16 {
                    return Err(WavError::NotPcm16 { format: tag, bits });
                }
                format = Some(
                    PcmFormat {
                        channels: u16_at(2),
                        sample_rate: u32::from_le_bytes([
                            bytes[body + 4],
                            bytes[body + 5],
                            bytes[body + 6],
                            bytes[body + 7],
                        ]),
                    }
                    .supported()?,
                );
            }
            b"data" => {
                let format = format.ok_or(WavError::NoFormat)?;
                let end = body.saturating_add(size).min(bytes.len());
                let frame = format.frame_bytes() as usize;
                // Whole frames only.
                let end = body + (end - body) / frame * frame;
                return Ok(Wav {
                    format,
                    data: body..end,
                });
            }
            _ => {}
        }
        pos = match body.checked_add(size).and_then(|p| p.checked_add(size % 2)) {
            Some(p) => p,
            None => break,
        };
    }
    Err(WavError::NoData)
}

/// The 44-byte header of a 16-bit PCM WAV file holding `data_bytes` of
/// samples of `format`: the one WAV header writer of the crate. A size that
/// does not fit the header's 32-bit fields (4 GiB: ≈ 24 hours of Gemini's
/// audio) is refused rather than wrapped or saturated.
pub fn wav_header(format: PcmFormat, data_bytes: u64) -> Result<[u8; 44], WavError> {
    let data = u32::try_from(data_bytes)
        .ok()
        .filter(|d| d.checked_add(36).is_some())
        .ok_or(WavError::TooLong { data_bytes })?;
    let block = 2 * format.channels;
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data + 36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&format.channels.to_le_bytes());
    h[24..28].copy_from_slice(&format.sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&(format.sample_rate * u32::from(block)).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    Ok(h)
}

/// `pcm` (16-bit little-endian samples of `format`) as a WAV file.
pub fn wav_of(pcm: &[u8], format: PcmFormat) -> Result<Vec<u8>, WavError> {
    let header = wav_header(format, pcm.len() as u64)?;
    let mut out = Vec::with_capacity(header.len() + pcm.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(pcm);
    Ok(out)
}

/// Frames of 10 ms decide what is speech.
const FRAME: Duration = Duration::from_millis(10);

/// A frame whose peak stays under this (−40 dBFS) is silence.
const SILENCE_PEAK: i32 = 328;

/// Silence kept at each side of the speech, so consonants' soft edges are
/// not clipped.
pub const MARGIN: Duration = Duration::from_millis(40);

/// What a take's audio holds: where its speech is and how much of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechBounds {
    /// Frames kept: from the first to the last frame of speech, with a small
    /// margin; empty when there is no speech at all.
    pub kept: Range<u64>,
    /// Frames of the whole audio.
    pub total: u64,
    /// 10 ms windows holding speech.
    pub voiced_windows: u64,
    /// 10 ms windows in all.
    pub windows: u64,
}

impl SpeechBounds {
    /// Share of the audio's windows that hold speech.
    pub fn voiced_share(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.voiced_windows as f64 / self.windows as f64
        }
    }
}

/// Finds the speech in `pcm` (16-bit little-endian samples of `format`).
pub fn speech_bounds(pcm: &[u8], format: PcmFormat) -> SpeechBounds {
    let frame_bytes = format.frame_bytes() as usize;
    let total = (pcm.len() / frame_bytes) as u64;
    let window = format.frames_in(FRAME).max(1);
    let mut first = None;
    let mut last = None;
    let mut voiced = 0u64;
    let mut windows = 0u64;
    let mut start = 0u64;
    while start < total {
        let end = (start + window).min(total);
        let bytes = &pcm[start as usize * frame_bytes..end as usize * frame_bytes];
        let loud = bytes
            .chunks_exact(2)
            .any(|s| i32::from(i16::from_le_bytes([s[0], s[1]])).abs() >= SILENCE_PEAK);
        windows += 1;
        if loud {
            voiced += 1;
            first.get_or_insert(start);
            last = Some(end);
        }
        start = end;
    }
    let margin = format.frames_in(MARGIN);
    let kept = match (first, last) {
        (Some(f), Some(l)) => f.saturating_sub(margin)..(l + margin).min(total),
        _ => 0..0,
    };
    SpeechBounds {
        kept,
        total,
        voiced_windows: voiced,
        windows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_header_writer_round_trips_and_refuses_what_does_not_fit() {
        let samples: Vec<u8> = (0..480u16).flat_map(|s| s.to_le_bytes()).collect();
        let wav = wav_of(&samples, PcmFormat::GEMINI).unwrap();
        let parsed = parse_wav(&wav).unwrap();
        assert_eq!(parsed.format, PcmFormat::GEMINI);
        assert_eq!(&wav[parsed.data], samples.as_slice());
        // The largest size the 32-bit fields hold, and one byte more.
        let max = u64::from(u32::MAX - 36);
        assert!(wav_header(PcmFormat::GEMINI, max).is_ok());
        assert_eq!(
            wav_header(PcmFormat::GEMINI, max + 1),
            Err(WavError::TooLong {
                data_bytes: max + 1
            })
        );
        assert!(wav_header(PcmFormat::GEMINI, u64::MAX).is_err());
    }
}
