//! WAV files written in one pass: the header carries lengths known up front
//! (no seeking back). 16-bit PCM (format tag 1) and G.711 μ-law (format tag
//! 7, 8-bit), whose table-driven codec is here.

use super::RenderError;

/// The 44-byte header of a mono 16-bit PCM WAV file of `frames` frames
/// ([`crate::pcm::wav_header`], the crate's one PCM header writer).
pub(crate) fn pcm_header(rate: u32, frames: u64) -> Result<Vec<u8>, RenderError> {
    let format = crate::pcm::PcmFormat {
        sample_rate: rate,
        channels: 1,
    };
    frames
        .checked_mul(2)
        .and_then(|bytes| crate::pcm::wav_header(format, bytes).ok())
        .map(|h| h.to_vec())
        .ok_or(RenderError::TooLong { frames })
}

/// Appends samples as little-endian 16-bit PCM.
pub(crate) fn pcm_samples(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// The 58-byte header of a mono μ-law WAV file (format tag 7, 8 bits) of
/// `frames` frames: a `fmt ` chunk of 18 bytes (cbSize 0), the `fact` chunk
/// non-PCM formats carry, and `data`. An odd data length is followed by the
/// pad byte RIFF requires ([`mulaw_trailer`]), counted in the RIFF size.
pub(crate) fn mulaw_header(rate: u32, frames: u64) -> Result<Vec<u8>, RenderError> {
    let data = u32::try_from(frames)
        .ok()
        .filter(|d| d.checked_add(51).is_some())
        .ok_or(RenderError::TooLong { frames })?;
    let pad = data % 2;
    let mut h = Vec::with_capacity(58);
    h.extend_from_slice(b"RIFF");
    // "WAVE" + fmt (8 + 18) + fact (8 + 4) + data (8 + data + pad)
    h.extend_from_slice(&(4 + 26 + 12 + 8 + data + pad).to_le_bytes());
    h.extend_from_slice(b"WAVE");
    h.extend_from_slice(b"fmt ");
    h.extend_from_slice(&18u32.to_le_bytes());
    h.extend_from_slice(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes()); // bytes per second
    h.extend_from_slice(&1u16.to_le_bytes()); // block align
    h.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    h.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    h.extend_from_slice(b"fact");
    h.extend_from_slice(&4u32.to_le_bytes());
    h.extend_from_slice(&data.to_le_bytes()); // sample frames
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data.to_le_bytes());
    Ok(h)
}

/// What follows the μ-law data: the RIFF pad byte when its length is odd.
pub(crate) fn mulaw_trailer(frames: u64) -> &'static [u8] {
    if frames % 2 == 1 { &[0] } else { &[] }
}

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// The G.711 segment (exponent) of a biased magnitude, by its bits 7–14.
const SEGMENT: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 1;
    while i < 256 {
        // floor(log2(i))
        let mut e = 0;
        while (i >> (e + 1)) > 0 {
            e += 1;
        }
        t[i] = e as u8;
        i += 1;
    }
    t
};

/// μ-law byte → linear 16-bit sample (ITU-T G.711, as every decoder expands it).
const EXPAND: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8);
        let exponent = (u >> 4) & 0x07;
        let mantissa = (u & 0x0F) as i32;
        let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
        t[i] = if u & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        i += 1;
    }
    t
};

/// Linear 16-bit sample → μ-law byte (ITU-T G.711).
pub(crate) fn mulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    let s = s.min(CLIP) + BIAS;
    let exponent = SEGMENT[((s >> 7) & 0xFF) as usize];
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa as u8)
}

/// μ-law byte → linear 16-bit sample.
pub(crate) fn mulaw_decode(byte: u8) -> i16 {
    EXPAND[byte as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_matches_g711_reference_points() {
        // Known G.711 μ-law code words.
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(mulaw_encode(-1), 0x7F);
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x80), 32_124);
        assert_eq!(mulaw_decode(0x00), -32_124);
    }

    #[test]
    fn mulaw_round_trips_its_own_levels_and_quantises_close() {
        for byte in 0..=255u8 {
            let linear = mulaw_decode(byte);
            // 0x7F (−0) decodes to 0, which encodes as +0 (0xFF).
            let back = mulaw_encode(linear);
            assert_eq!(mulaw_decode(back), linear, "byte {byte:#04x}");
        }
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let err = (i32::from(mulaw_decode(mulaw_encode(s))) - i32::from(s)).abs();
            let magnitude = i32::from(s).abs();
            if magnitude <= CLIP {
                // At most half a step; the step is 2^(segment + 3), at most
                // a sixteenth of the biased magnitude.
                assert!(err <= (magnitude + BIAS) / 32 + 1, "{s}: error {err}");
            } else {
                assert!(err <= 32_768 - 32_124, "{s}: error {err}");
            }
        }
    }

    #[test]
    fn headers_say_the_length_of_the_file() {
        let h = pcm_header(16_000, 1001).expect("header");
        assert_eq!(h.len(), 44);
        let riff = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!(riff as usize + 8, 44 + 2002);
        let h = mulaw_header(8_000, 1001).expect("header");
        assert_eq!(h.len(), 58);
        let riff = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!(riff as usize + 8, 58 + 1001 + mulaw_trailer(1001).len());
        assert!(pcm_header(48_000, u64::from(u32::MAX)).is_err());
    }
}
