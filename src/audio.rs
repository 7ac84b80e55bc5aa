//! Recognising audio bytes: container sniffing (WAV, MP3, Ogg, FLAC), WAV
//! duration, and wrapping raw PCM (Gemini's native s16le 24 kHz mono) in a WAV
//! header when the server sends it bare.

use bytes::Bytes;

use crate::failure::{AsFault, Fault};
use crate::pcm::{PcmFormat, WavError};

/// The longest take accepted from upstream, in seconds: one Gemini call
/// produces at most ≈ 512 s, so anything much longer is not a take. Bounds
/// what a decoder may allocate before it starts (an MP3 of 100 MiB at
/// 32 kbit/s would otherwise decode to ≈ 4.8 GB of PCM).
pub const MAX_TAKE_SECONDS: u32 = 600;

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
    #[error("{0}")]
    Unsupported(WavError),
    #[error("the audio is longer than {MAX_TAKE_SECONDS} s, more than one call can produce")]
    TooLong,
    #[error("the audio decodes to more than segmind.max_audio_bytes ({limit} bytes)")]
    DecodedTooLarge { limit: u64 },
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
                AudioFormat::Wav => {
                    // Its rate and channels are checked before anything is
                    // sized by them.
                    if let Err(e @ WavError::Unsupported { .. }) = crate::pcm::parse_wav(&bytes) {
                        return Err(AudioError::Unsupported(e));
                    }
                    Some(wav_duration(&bytes).ok_or(AudioError::NoSamples)?)
                }
                _ => None,
            };
            if duration_seconds.is_some_and(|d| d > f64::from(MAX_TAKE_SECONDS)) {
                return Err(AudioError::TooLong);
            }
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
            let format = PcmFormat {
                sample_rate: rate,
                channels: 1,
            }
            .supported()
            .map_err(AudioError::Unsupported)?;
            if bytes.len() as u64 / format.frame_bytes()
                > u64::from(MAX_TAKE_SECONDS) * u64::from(rate)
            {
                return Err(AudioError::TooLong);
            }
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
/// it off the async threads. Its rate and channels are checked on the first
/// frame, and decoding stops before the PCM passes [`MAX_TAKE_SECONDS`]
/// ([`AudioError::TooLong`]) or `max_bytes` (a part's audio, decoded, is
/// held to `segmind.max_audio_bytes` like what is served).
pub fn decode_mp3(bytes: Bytes, max_bytes: u64) -> Result<Pcm, AudioError> {
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
                let format = PcmFormat {
                    sample_rate: decoded.spec().rate(),
                    channels: u16::try_from(decoded.spec().channels().count()).unwrap_or(u16::MAX),
                }
                .supported()
                .map_err(AudioError::Unsupported)?;
                if pcm.samples.is_empty() {
                    (pcm.sample_rate, pcm.channels) = (format.sample_rate, format.channels);
                } else if (pcm.sample_rate, pcm.channels) != (format.sample_rate, format.channels) {
                    return Err(fail("the stream changes its rate or channels".into()));
                }
                decoded.copy_to_vec_interleaved(&mut scratch);
                let cap = u64::from(MAX_TAKE_SECONDS)
                    * u64::from(format.sample_rate)
                    * format.frame_bytes();
                let next = (pcm.samples.len() + scratch.len() * 2) as u64;
                if next > cap {
                    return Err(AudioError::TooLong);
                }
                if next > max_bytes {
                    return Err(AudioError::DecodedTooLarge { limit: max_bytes });
                }
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

    /// A 16-bit PCM WAV file whose header claims `rate` and `channels`,
    /// with `data_bytes` of samples.
    fn wav_claiming(rate: u32, channels: u16, data_bytes: usize) -> Vec<u8> {
        let mut wav = crate::pcm::wav_header(
            PcmFormat {
                sample_rate: 24_000,
                channels: 1,
            },
            data_bytes as u64,
        )
        .unwrap()
        .to_vec();
        wav[22..24].copy_from_slice(&channels.to_le_bytes());
        wav[24..28].copy_from_slice(&rate.to_le_bytes());
        let byte_rate = rate.saturating_mul(2 * u32::from(channels));
        wav[28..32].copy_from_slice(&byte_rate.to_le_bytes());
        wav[32..34].copy_from_slice(&channels.saturating_mul(2).to_le_bytes());
        wav.resize(44 + data_bytes, 0x10);
        wav
    }

    #[test]
    fn hostile_headers_are_refused_before_anything_is_sized_by_them() {
        for (rate, channels) in [
            (1_000_000_000, 1),
            (u32::MAX, 2),
            (7_999, 1),
            (48_001, 1),
            (0, 1),
            (24_000, 0),
            (24_000, 3),
            (24_000, u16::MAX),
        ] {
            let wav = wav_claiming(rate, channels, 4_800);
            match Audio::parse(Bytes::from(wav), Some("audio/wav")) {
                Err(AudioError::Unsupported(e)) => {
                    assert!(e.to_string().contains(&format!("{rate} Hz")), "{e}")
                }
                other => panic!("{rate} Hz × {channels}: {:?}", other.map(|a| a.format)),
            }
        }
        for (rate, channels) in [(8_000, 1), (48_000, 2), (24_000, 1)] {
            let wav = wav_claiming(rate, channels, 4_800);
            assert!(Audio::parse(Bytes::from(wav), None).is_ok(), "{rate} Hz");
        }
        let raw = Audio::parse(
            Bytes::from(vec![0u8; 4_800]),
            Some("audio/L16;rate=1000000000"),
        );
        assert!(matches!(raw, Err(AudioError::Unsupported(_))), "{raw:?}");
    }

    mod hostile {
        //! The audio decoders' fuzz target, on hostile headers and bytes:
        //! `PROPTEST_CASES=100000 cargo test --lib audio::tests::hostile`
        //! (README "Tests").
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// One second of 24 kHz speech-like tone as MP3, made by the
        /// simulator's LAME encoder: the bytes the MP3 cases mutate.
        fn mp3() -> &'static [u8] {
            static MP3: OnceLock<Vec<u8>> = OnceLock::new();
            MP3.get_or_init(|| {
                let pcm: Vec<u8> = (0..24_000)
                    .flat_map(|i| {
                        let x = (f64::from(i) * 0.05).sin() * 8_000.0;
                        (x as i16).to_le_bytes()
                    })
                    .collect();
                segmind_sim::mp3::from_wav(&segmind_sim::wav::from_pcm(&pcm, 24_000))
                    .expect("LAME encodes")
            })
        }

        proptest! {
            #[test]
            fn any_wav_header_is_bounded_or_refused(
                tag in prop_oneof![Just(1u16), Just(0xFFFE), any::<u16>()],
                channels in any::<u16>(),
                rate in prop_oneof![Just(1_000_000_000u32), 7_000u32..50_000, any::<u32>()],
                byte_rate in any::<u32>(),
                align in any::<u16>(),
                bits in prop_oneof![Just(16u16), any::<u16>()],
                data_size in any::<u32>(),
                body in prop::collection::vec(any::<u8>(), 0..4_096),
            ) {
                let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
                for field in [&tag.to_le_bytes()[..], &channels.to_le_bytes(), &rate.to_le_bytes(),
                              &byte_rate.to_le_bytes(), &align.to_le_bytes(), &bits.to_le_bytes()] {
                    wav.extend_from_slice(field);
                }
                wav.extend_from_slice(b"data");
                wav.extend_from_slice(&data_size.to_le_bytes());
                wav.extend_from_slice(&body);
                if let Ok(wav) = crate::pcm::parse_wav(&wav) {
                    prop_assert!(wav.format.supported().is_ok());
                }
                if let Ok(audio) = Audio::parse(Bytes::from(wav), Some("audio/wav")) {
                    let d = audio.duration_seconds.unwrap_or(0.0);
                    prop_assert!(d > 0.0 && d <= f64::from(MAX_TAKE_SECONDS), "{d}");
                }
            }

            #[test]
            fn raw_pcm_of_any_declared_rate_is_bounded_or_refused(
                rate in any::<u32>(),
                len in 0usize..8_192,
            ) {
                let mime = format!("audio/L16;rate={rate}");
                if let Ok(audio) = Audio::parse(Bytes::from(vec![1u8; len]), Some(&mime)) {
                    prop_assert!(crate::pcm::SAMPLE_RATES.contains(&rate));
                    prop_assert!(audio.duration_seconds.unwrap_or(0.0) <= f64::from(MAX_TAKE_SECONDS));
                }
            }

            #[test]
            fn a_damaged_mp3_decodes_within_bounds_or_is_refused(
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..64),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = mp3().to_vec();
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                bytes.truncate(cut.index(bytes.len()) + 1);
                if let Ok(pcm) = decode_mp3(Bytes::from(bytes), 64 << 20) {
                    let format = PcmFormat { sample_rate: pcm.sample_rate, channels: pcm.channels };
                    prop_assert!(format.supported().is_ok());
                    prop_assert!(pcm.samples.len() as u64
                        <= u64::from(MAX_TAKE_SECONDS) * u64::from(pcm.sample_rate) * format.frame_bytes());
                }
            }
        }
    }

    #[test]
    fn a_take_longer_than_any_call_produces_is_refused() {
        let at_cap = (MAX_TAKE_SECONDS * 8_000 * 2) as usize;
        let wav = wav_claiming(8_000, 1, at_cap);
        assert!(Audio::parse(Bytes::from(wav), None).is_ok());
        // (Compared by `matches!`: a failure must not print megabytes.)
        let wav = wav_claiming(8_000, 1, at_cap + 16_000);
        assert!(matches!(
            Audio::parse(Bytes::from(wav), None),
            Err(AudioError::TooLong)
        ));
        let raw = Audio::parse(
            Bytes::from(vec![0u8; at_cap + 16_000]),
            Some("audio/L16;rate=8000"),
        );
        assert!(matches!(raw, Err(AudioError::TooLong)));
    }

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
