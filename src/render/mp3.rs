//! MP3: LAME (mp3lame-encoder), CBR, mono, gapless: the stream starts with a
//! Xing "Info" frame carrying LAME's extension (frame count, encoder delay
//! and padding), written before the first audio frame from the programme's
//! length, known before encoding ([`info_frame`]; LAME's own tag would need a
//! seek back to the start, which a stream uploaded as it is encoded cannot
//! do). Decoders that read it (ffmpeg, mpg123, most players) give exactly the
//! programme's samples. The frames LAME gives are split here and decoded
//! again in stream by Symphonia's MP3 decoder, so that loudness and true peak
//! are measured on what a decoder of the file gets.

use std::num::NonZeroU32;

use mp3lame_encoder::{Builder, FlushGap, Mode, MonoPcm, Quality, VbrMode};
use symphonia::core::codecs::audio::well_known::CODEC_ID_MP3;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::PacketRef;
use symphonia::core::units::{Duration, Timestamp};
use symphonia::default::codecs::MpaDecoder;

use super::RenderError;
use super::loudness::{LoudnessMeter, Measured};

/// LAME's `-q`: 0 best … 9 worst. 5 is LAME's default ("good"): the
/// psychoacoustic model without the slowest searches.
const QUALITY: Quality = Quality::Good;

pub(crate) struct Mp3Encoder {
    lame: mp3lame_encoder::Encoder,
    /// Encoded bytes not yet split into frames (less than a frame).
    carry: Vec<u8>,
    decoder: MpaDecoder,
    decoded: Vec<f32>,
    meter: LoudnessMeter,
}

fn lame_error(what: &str, e: impl std::fmt::Debug) -> RenderError {
    RenderError::Mp3(format!("{what}: {e:?}"))
}

impl Mp3Encoder {
    pub(crate) fn new(rate: u32, bitrate_kbps: u32) -> Result<Self, RenderError> {
        let mut b = Builder::new().ok_or_else(|| RenderError::Mp3("lame_init failed".into()))?;
        b.set_num_channels(1)
            .map_err(|e| lame_error("channels", e))?;
        b.set_sample_rate(rate)
            .map_err(|e| lame_error("sample rate", e))?;
        // The same rate out: LAME would otherwise pick one for the bitrate.
        b.set_output_sample_rate(NonZeroU32::new(rate))
            .map_err(|e| lame_error("output sample rate", e))?;
        b.set_mode(Mode::Mono).map_err(|e| lame_error("mode", e))?;
        b.set_vbr_mode(VbrMode::Off)
            .map_err(|e| lame_error("cbr", e))?;
        set_bitrate(&mut b, bitrate_kbps)?;
        b.set_quality(QUALITY)
            .map_err(|e| lame_error("quality", e))?;
        // LAME's own tag would reserve a silent frame at the start, to be
        // overwritten after a seek we cannot do: [`info_frame`] writes it.
        b.set_to_write_vbr_tag(false)
            .map_err(|e| lame_error("vbr tag", e))?;
        let lame = b.build().map_err(|e| lame_error("init", e))?;
        let mut params = AudioCodecParameters::new();
        params.for_codec(CODEC_ID_MP3);
        let decoder = MpaDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| RenderError::Mp3(format!("decoder: {e}")))?;
        Ok(Mp3Encoder {
            lame,
            carry: Vec::new(),
            decoder,
            decoded: Vec::new(),
            meter: LoudnessMeter::new(rate)?,
        })
    }

    pub(crate) fn push(&mut self, samples: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError> {
        if samples.is_empty() {
            return Ok(());
        }
        let start = out.len();
        out.reserve(mp3lame_encoder::max_required_buffer_size(samples.len()));
        self.lame
            .encode_to_vec(MonoPcm(samples), out)
            .map_err(|e| lame_error("encode", e))?;
        self.decode(start, out)
    }

    /// Flushes LAME (the last frame padded with silence) and returns the
    /// loudness of the whole decoded stream.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<Measured, RenderError> {
        let start = out.len();
        out.reserve(7200);
        self.lame
            .flush_to_vec::<FlushGap>(out)
            .map_err(|e| lame_error("flush", e))?;
        self.decode(start, out)?;
        if !self.carry.is_empty() {
            return Err(RenderError::Mp3(format!(
                "{} bytes after the last whole frame",
                self.carry.len()
            )));
        }
        self.meter.measured()
    }

    /// Splits `out[start..]` (new encoder output) into frames and decodes
    /// them into the meter.
    fn decode(&mut self, start: usize, out: &[u8]) -> Result<(), RenderError> {
        self.carry.extend_from_slice(&out[start..]);
        let mut at = 0;
        while let Some(len) = frame_len(&self.carry[at..])? {
            if self.carry.len() - at < len {
                break;
            }
            let frame = &self.carry[at..at + len];
            let packet = PacketRef::new(0, Timestamp::ZERO, Duration::ZERO, frame);
            let decoded = self
                .decoder
                .decode_ref(&packet)
                .map_err(|e| RenderError::Mp3(format!("decoding it again: {e}")))?;
            decoded.copy_to_vec_interleaved(&mut self.decoded);
            self.meter.add_f32(&self.decoded)?;
            at += len;
        }
        self.carry.drain(..at);
        Ok(())
    }
}

/// The length of the MPEG audio Layer III frame at the start of `bytes`, or
/// `None` when its 4-byte header is not all there yet.
fn frame_len(bytes: &[u8]) -> Result<Option<usize>, RenderError> {
    let Some(h) = bytes.get(..4) else {
        return Ok(None);
    };
    let bad = || RenderError::Mp3(format!("not a Layer III frame header: {h:02x?}"));
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 || (h[1] >> 1) & 0b11 != 0b01 {
        return Err(bad());
    }
    let version = (h[1] >> 3) & 0b11; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let bitrate_index = usize::from(h[2] >> 4);
    let rate_index = usize::from((h[2] >> 2) & 0b11);
    let padding = usize::from((h[2] >> 1) & 1);
    const MPEG1_KBPS: [usize; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2_KBPS: [usize; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (kbps, rates, per_kbps): (&[usize; 15], [usize; 3], usize) = match version {
        3 => (&MPEG1_KBPS, [44_100, 48_000, 32_000], 144_000),
        2 => (&MPEG2_KBPS, [22_050, 24_000, 16_000], 72_000),
        0 => (&MPEG2_KBPS, [11_025, 12_000, 8_000], 72_000),
        _ => return Err(bad()),
    };
    let (Some(&kbps), Some(&rate)) = (kbps.get(bitrate_index), rates.get(rate_index)) else {
        return Err(bad());
    };
    if kbps == 0 {
        return Err(bad());
    }
    Ok(Some(per_kbps * kbps / rate + padding))
}

/// LAME 3.100's encoder delay (`ENCDELAY`): silence before the first
/// input sample, which the Info frame tells decoders to skip (with the
/// decoder's own 529).
const ENCODER_DELAY: u64 = 576;

/// MPEG version and Layer III samples per frame for an output rate.
fn version_of(rate: u32) -> Option<(u8, u64, [u32; 3])> {
    match rate {
        32_000 | 44_100 | 48_000 => Some((0b11, 1152, [44_100, 48_000, 32_000])),
        16_000 | 22_050 | 24_000 => Some((0b10, 576, [22_050, 24_000, 16_000])),
        8_000 | 11_025 | 12_000 => Some((0b00, 576, [11_025, 12_000, 8_000])),
        _ => None,
    }
}

/// The frames LAME 3.100 writes for `samples` of input at `spf` samples a
/// frame, and the padding after the last input sample: `lame_encode_flush`
/// pads the delay and the input to whole frames, with at least 576 samples
/// of padding (`lame.c`, checked against LAME in the tests).
fn stream_layout(samples: u64, spf: u64) -> (u64, u64) {
    let mut padding = spf - (ENCODER_DELAY + samples) % spf;
    if padding < 576 {
        padding += spf;
    }
    ((ENCODER_DELAY + samples + padding) / spf, padding)
}

/// The Xing "Info" frame with LAME's extension for a CBR mono stream of
/// `samples` at `rate` and `kbps`: a frame of silence to decoders that do
/// not read it, the stream's frame count, encoder delay and padding to those
/// that do.
pub(crate) fn info_frame(rate: u32, kbps: u32, samples: u64) -> Result<Vec<u8>, RenderError> {
    let (version, spf, rates) =
        version_of(rate).ok_or_else(|| RenderError::Mp3(format!("no MPEG rate {rate} Hz")))?;
    const MPEG1_KBPS: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const MPEG2_KBPS: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let table = if version == 0b11 {
        &MPEG1_KBPS
    } else {
        &MPEG2_KBPS
    };
    let bitrate_index = table
        .iter()
        .position(|&k| k == kbps && k != 0)
        .ok_or_else(|| RenderError::Mp3(format!("no Layer III bitrate {kbps} kbit/s here")))?;
    let rate_index = rates.iter().position(|&r| r == rate).unwrap_or(0);
    let header = [
        0xFF,
        0xE0 | (version << 3) | (0b01 << 1) | 1, // Layer III, no CRC
        ((bitrate_index as u8) << 4) | ((rate_index as u8) << 2),
        0xC4, // mono, original
    ];
    let len = frame_len(&header)?.unwrap_or(0);
    let side_info = if version == 0b11 { 17 } else { 9 };
    let (frames, padding) = stream_layout(samples, spf);
    let frames = u32::try_from(frames)
        .map_err(|_| RenderError::Mp3(format!("{samples} samples are too long for one MP3")))?;
    let mut tag = Vec::with_capacity(len);
    tag.extend_from_slice(&header);
    tag.resize(4 + side_info, 0);
    tag.extend_from_slice(b"Info");
    tag.extend_from_slice(&1u32.to_be_bytes()); // flags: the frame count
    tag.extend_from_slice(&frames.to_be_bytes());
    tag.extend_from_slice(b"LAME3.100");
    tag.push(0x01); // tag revision 0, CBR
    tag.push(0); // lowpass (not given)
    tag.extend_from_slice(&[0; 4 + 2 + 2]); // ReplayGain: none
    tag.push(0); // encoding flags, ATH type
    tag.push(u8::try_from(kbps).unwrap_or(u8::MAX));
    let delays = ((ENCODER_DELAY as u32) << 12) | (padding as u32 & 0xFFF);
    tag.extend_from_slice(&delays.to_be_bytes()[1..]);
    tag.push(0); // misc
    tag.push(0); // MP3 gain
    tag.extend_from_slice(&[0; 2]); // preset, surround
    tag.extend_from_slice(&[0; 4]); // music length (not given)
    tag.extend_from_slice(&[0; 2]); // music CRC (not given)
    let crc = crc16(&tag);
    tag.extend_from_slice(&crc.to_be_bytes());
    if tag.len() > len {
        return Err(RenderError::Mp3(format!(
            "a {len}-byte frame ({kbps} kbit/s at {rate} Hz) cannot hold the Info tag"
        )));
    }
    tag.resize(len, 0);
    Ok(tag)
}

/// CRC-16 (polynomial 0x8005, reflected: LAME's tag CRC).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// CBR bitrate. LAME takes any MPEG bitrate; the wrapper's enum lacks some
/// (56, 144 kbit/s), so it is set through LAME's own API.
fn set_bitrate(b: &mut Builder, kbps: u32) -> Result<(), RenderError> {
    let kbps = std::ffi::c_int::try_from(kbps)
        .map_err(|_| RenderError::Mp3(format!("bitrate {kbps} kbit/s")))?;
    // SAFETY: the pointer is the builder's live `lame_global_flags`, used
    // only for this call, before `lame_init_params` (`build`).
    let rc = unsafe { mp3lame_encoder::ffi::lame_set_brate(b.as_ptr(), kbps) };
    if rc != 0 {
        return Err(RenderError::Mp3(format!(
            "bitrate {kbps} kbit/s refused ({rc})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_follow_the_header() {
        // MPEG-1, 64 kbit/s, 48 kHz, no padding: 144000 × 64 / 48000 = 192.
        assert_eq!(frame_len(&[0xFF, 0xFB, 0x54, 0xC4]).expect("ok"), Some(192));
        // MPEG-2, 48 kbit/s, 24 kHz, padding: 72000 × 48 / 24000 + 1 = 145.
        assert_eq!(frame_len(&[0xFF, 0xF3, 0x66, 0xC4]).expect("ok"), Some(145));
        assert_eq!(frame_len(&[0xFF, 0xF3]).expect("ok"), None);
        assert!(frame_len(b"ID3\x04").is_err());
    }

    /// LAME writes exactly the frames [`stream_layout`] predicts, which is
    /// what the Info frame announces before a byte of audio exists.
    #[test]
    fn the_info_frame_announces_the_frames_lame_writes() {
        for (rate, kbps) in [
            (8_000, 8),
            (16_000, 32),
            (24_000, 48),
            (44_100, 64),
            (48_000, 128),
        ] {
            for samples in [0usize, 1, 575, 576, 577, 1151, 1152, 1153, 10_000, 48_001] {
                let mut encoder = Mp3Encoder::new(rate, kbps).expect("encoder");
                let mut out = Vec::new();
                let pcm: Vec<i16> = (0..samples).map(|i| ((i * 37) % 2000) as i16).collect();
                for chunk in pcm.chunks(1000) {
                    encoder.push(chunk, &mut out).expect("push");
                }
                encoder.finish(&mut out).expect("finish");
                let mut frames = 0u64;
                let mut at = 0;
                while at < out.len() {
                    at += frame_len(&out[at..]).expect("a frame").expect("whole");
                    frames += 1;
                }
                let spf = version_of(rate).expect("rate").1;
                assert_eq!(
                    (frames, frames * spf),
                    {
                        let (f, padding) = stream_layout(samples as u64, spf);
                        (f, ENCODER_DELAY + samples as u64 + padding)
                    },
                    "{samples} samples at {rate} Hz"
                );
                let tag = info_frame(rate, kbps, samples as u64).expect("tag");
                assert_eq!(Some(tag.len()), frame_len(&tag).expect("a frame"));
            }
        }
    }
}
