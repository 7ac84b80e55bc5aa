//! Recognising audio bytes: container sniffing (WAV, MP3, Ogg, FLAC), WAV
//! duration, and wrapping raw PCM (Gemini's native s16le 24 kHz mono) in a WAV
//! header when the server sends it bare.

use bytes::Bytes;

use crate::failure::{AsFault, Fault};

/// A recognised audio container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    Mp3,
    Ogg,
    Flac,
}

impl AudioFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Ogg => "audio/ogg",
            AudioFormat::Flac => "audio/flac",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Flac => "flac",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    #[error("the audio is empty")]
    Empty,
    #[error("the WAV file holds no samples")]
    NoSamples,
    #[error("the audio is mostly silence ({voiced_percent:.0} % of it holds speech)")]
    MostlySilence { voiced_percent: f64 },
    #[error(
        "{seconds:.1} s of speech where its text takes ≈ {expected:.1} s in this voice: {percent:.0} % (Gemini's silent truncation)"
    )]
    Truncated {
        seconds: f64,
        expected: f64,
        percent: f64,
    },
    #[error(
        "{seconds:.1} s of speech: at Gemini's output cap (≈ 512 s of audio a call), so cut short"
    )]
    AtOutputCap { seconds: f64 },
    #[error("a part served as {format} cannot be stitched (16-bit PCM WAV and MP3 can)")]
    NotStitchable { format: &'static str },
    #[error("the {format} audio could not be decoded: {detail}")]
    Undecodable {
        format: &'static str,
        detail: String,
    },
    #[error("the parts differ in format ({first} and {other}); they cannot be stitched")]
    MixedFormats { first: String, other: String },
    #[error(
        "the bytes are not a known audio format (content type {content_type:?}, starts with {head})"
    )]
    Unrecognised {
        content_type: Option<String>,
        head: String,
    },
}

impl AsFault for AudioError {
    fn fault(&self) -> Fault<'_> {
        Fault::BadAudio
    }
}

/// Audio checked to be non-empty and of a known container.
#[derive(Debug, Clone)]
pub struct Audio {
    pub bytes: Bytes,
    pub format: AudioFormat,
    pub duration_seconds: Option<f64>,
}

impl Audio {
    /// Checks `bytes`, using the server's `content_type` only for raw PCM,
    /// which has no magic number.
    pub fn parse(bytes: Bytes, content_type: Option<&str>) -> Result<Audio, AudioError> {
        if bytes.is_empty() {
            return Err(AudioError::Empty);
        }
        if let Some(format) = sniff(&bytes) {
            let duration_seconds = match format {
                AudioFormat::Wav => Some(wav_duration(&bytes).ok_or(AudioError::NoSamples)?),
                _ => None,
            };
            if duration_seconds == Some(0.0) {
                return Err(AudioError::NoSamples);
            }
            return Ok(Audio {
                bytes,
                format,
                duration_seconds,
            });
        }
        let mime = content_type.map(|c| c.to_ascii_lowercase());
        let is_pcm = mime
            .as_deref()
            .is_some_and(|m| m.starts_with("audio/l16") || m.starts_with("audio/pcm"));
        if is_pcm {
            let rate = mime
                .as_deref()
                .and_then(|m| m.split("rate=").nth(1))
                .and_then(|r| r.split(';').next())
                .and_then(|r| r.trim().parse().ok())
                .unwrap_or(24_000);
            let wav = wav_from_pcm(&bytes, rate)?;
            let duration_seconds = wav_duration(&wav);
            return Ok(Audio {
                bytes: Bytes::from(wav),
                format: AudioFormat::Wav,
                duration_seconds,
            });
        }
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(AudioError::Unrecognised {
            content_type: content_type.map(str::to_owned),
            head,
        })
    }
}

/// Decoded audio: interleaved 16-bit little-endian samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcm {
    pub sample_rate: u32,
    pub channels: u16,
    pub samples: Vec<u8>,
}

/// Decodes an MP3 file to PCM with Symphonia (pure Rust). CPU-bound: call
/// it off the async threads.
pub fn decode_mp3(bytes: Bytes) -> Result<Pcm, AudioError> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::errors::Error;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    let fail = |detail: String| AudioError::Undecodable {
        format: "mp3",
        detail,
    };
    let source = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp3");
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| fail(e.to_string()))?;
    let (track_id, mut decoder) = {
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| fail("no audio track".into()))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| fail("no audio codec parameters".into()))?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|e| fail(e.to_string()))?;
        (track.id, decoder)
    };
    let mut pcm = Pcm {
        sample_rate: 0,
        channels: 0,
        samples: Vec::new(),
    };
    let mut scratch: Vec<i16> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A truncated last frame ends the stream.
            Err(Error::IoError(_)) => break,
            Err(e) => return Err(fail(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                pcm.sample_rate = decoded.spec().rate();
                pcm.channels = u16::try_from(decoded.spec().channels().count()).unwrap_or(1);
                decoded.copy_to_vec_interleaved(&mut scratch);
                pcm.samples.reserve(scratch.len() * 2);
                for s in &scratch {
                    pcm.samples.extend_from_slice(&s.to_le_bytes());
                }
            }
            // A corrupt frame is skipped, as players do.
            Err(Error::DecodeError(_) | Error::IoError(_)) => continue,
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    if pcm.samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(pcm)
}

/// Recognises a container by its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<AudioFormat> {
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        return Some(AudioFormat::Wav);
    }
    if bytes.starts_with(b"OggS") {
        return Some(AudioFormat::Ogg);
    }
    if bytes.starts_with(b"fLaC") {
        return Some(AudioFormat::Flac);
    }
    if bytes.starts_with(b"ID3") {
        return Some(AudioFormat::Mp3);
    }
    // MPEG audio frame sync: 11 set bits, a valid version and layer III/II/I.
    if bytes.len() >= 2 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0 {
        let version = (bytes[1] >> 3) & 0b11;
        let layer = (bytes[1] >> 1) & 0b11;
        if version != 0b01 && layer != 0b00 {
            return Some(AudioFormat::Mp3);
        }
    }
    None
}

/// Duration of a PCM WAV file from its `fmt ` and `data` chunks.
pub fn wav_duration(bytes: &[u8]) -> Option<f64> {
    let mut pos = 12;
    let mut byte_rate: Option<u32> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = pos + 8;
        match id {
            b"fmt " if size >= 16 && body + 16 <= bytes.len() => {
                byte_rate = Some(u32::from_le_bytes(
                    bytes[body + 8..body + 12].try_into().ok()?,
                ));
            }
            b"data" => {
                let rate = byte_rate.filter(|r| *r > 0)?;
                // A streamed WAV may announce a bigger (or 0xFFFFFFFF) size than it has.
                let available = bytes.len().saturating_sub(body).min(size);
                return Some(available as f64 / f64::from(rate));
            }
            _ => {}
        }
        pos = body.checked_add(size)?.checked_add(size % 2)?;
    }
    None
}

/// Wraps 16-bit little-endian mono PCM in a WAV header
/// ([`crate::pcm::wav_of`]); PCM too long for a WAV header is refused.
pub fn wav_from_pcm(pcm: &[u8], sample_rate: u32) -> Result<Vec<u8>, AudioError> {
    let format = crate::pcm::PcmFormat {
        sample_rate,
        channels: 1,
    };
    crate::pcm::wav_of(pcm, format).map_err(|e| AudioError::Undecodable {
        format: "pcm",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_container() {
        assert_eq!(
            sniff(&wav_from_pcm(&[0, 0], 24_000).unwrap()),
            Some(AudioFormat::Wav)
        );
        assert_eq!(sniff(b"ID3\x04\x00rest"), Some(AudioFormat::Mp3));
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(AudioFormat::Mp3));
        assert_eq!(sniff(b"OggS\x00\x02"), Some(AudioFormat::Ogg));
        assert_eq!(sniff(b"fLaC\x00"), Some(AudioFormat::Flac));
        assert_eq!(sniff(b"<html>oops</html>"), None);
        assert_eq!(sniff(b"RIFF\x00\x00\x00\x00AVI "), None);
        assert_eq!(sniff(&[0xFF, 0xE9]), None, "reserved MPEG version");
    }

    #[test]
    fn wav_duration_comes_from_the_data_chunk() {
        let one_second = vec![0u8; 48_000];
        let wav = wav_from_pcm(&one_second, 24_000).unwrap();
        assert_eq!(wav_duration(&wav), Some(1.0));
        let parsed = Audio::parse(Bytes::from(wav), Some("audio/wav")).unwrap();
        assert_eq!(parsed.format, AudioFormat::Wav);
        assert_eq!(parsed.duration_seconds, Some(1.0));
    }

    #[test]
    fn rejects_empty_silent_header_only_and_non_audio() {
        assert_eq!(
            Audio::parse(Bytes::new(), None).unwrap_err(),
            AudioError::Empty
        );
        let header_only = wav_from_pcm(&[], 24_000).unwrap();
        assert_eq!(
            Audio::parse(Bytes::from(header_only), None).unwrap_err(),
            AudioError::NoSamples
        );
        let err = Audio::parse(
            Bytes::from_static(b"{\"error\":1}"),
            Some("application/json"),
        )
        .unwrap_err();
        assert!(matches!(err, AudioError::Unrecognised { .. }));
        assert!(err.to_string().contains("application/json"));
    }

    #[test]
    fn raw_pcm_is_wrapped_as_wav_using_the_declared_rate() {
        let pcm = vec![1u8; 32_000];
        let a = Audio::parse(Bytes::from(pcm), Some("audio/L16;rate=16000")).unwrap();
        assert_eq!(a.format, AudioFormat::Wav);
        assert_eq!(a.duration_seconds, Some(1.0));
        assert_eq!(sniff(&a.bytes), Some(AudioFormat::Wav));
    }

    #[test]
    fn extensions_and_content_types() {
        assert_eq!(AudioFormat::Mp3.extension(), "mp3");
        assert_eq!(AudioFormat::Wav.content_type(), "audio/wav");
    }
}
