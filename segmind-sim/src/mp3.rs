//! MP3 results: Segmind may wrap Gemini's PCM in MP3 (audio-facts.md: "What
//! Segmind wraps it in (WAV or MP3) is unknown"), so the simulator can serve
//! either. Encoded with LAME (`mp3lame-encoder`), mono at the WAV's rate.

use mp3lame_encoder::{Bitrate, Builder, FlushNoGap, MonoPcm, Quality};

use crate::wav;

/// The WAV file `wav` as MP3 (64 kbit/s CBR); `None` if LAME refuses it.
pub fn from_wav(wav_bytes: &[u8]) -> Option<Vec<u8>> {
    let (rate, data) = wav::pcm_of(wav_bytes)?;
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut builder = Builder::new()?;
    builder.set_num_channels(1).ok()?;
    builder.set_sample_rate(rate).ok()?;
    builder.set_brate(Bitrate::Kbps64).ok()?;
    builder.set_quality(Quality::Good).ok()?;
    let mut encoder = builder.build().ok()?;
    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(samples.len()));
    encoder.encode_to_vec(MonoPcm(&samples), &mut out).ok()?;
    encoder.flush_to_vec::<FlushNoGap>(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_becomes_an_mp3_of_the_same_length() {
        let wav = crate::speech::render_seconds(3.0, false);
        let mp3 = from_wav(&wav).expect("encodes");
        // An MPEG-2 layer III frame header (24 kHz), after any ID3 tag.
        let frame = mp3
            .windows(2)
            .position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0)
            .expect("a frame");
        assert!(frame < 1024, "the audio starts early: {frame}");
        // 64 kbit/s for 3 s is 24,000 bytes, plus a frame or two.
        assert!((23_000..27_000).contains(&mp3.len()), "{} bytes", mp3.len());
    }
}
