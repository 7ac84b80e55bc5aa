//! The simulator's own WAV writer and reader: 16-bit PCM, mono.

/// Wraps 16-bit little-endian mono PCM in a canonical 44-byte WAV header.
pub fn from_pcm(pcm: &[u8], sample_rate: u32) -> Vec<u8> {
    let data_len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

/// The sample rate and the bytes of the `data` chunk of a WAV file. A chunk
/// announcing more than the file holds (espeak-ng streaming to stdout writes
/// a huge size) is cut at the end of the file.
pub fn pcm_of(wav: &[u8]) -> Option<(u32, &[u8])> {
    if wav.len() < 12 || &wav[0..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return None;
    }
    let mut rate = None;
    let mut pos = 12;
    while pos + 8 <= wav.len() {
        let size = u32::from_le_bytes(wav[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = pos + 8;
        match &wav[pos..pos + 4] {
            b"fmt " if body + 8 <= wav.len() => {
                rate = Some(u32::from_le_bytes(wav[body + 4..body + 8].try_into().ok()?));
            }
            b"data" => {
                let end = body.saturating_add(size).min(wav.len());
                return Some((rate?, &wav[body..end]));
            }
            _ => {}
        }
        pos = body.checked_add(size)?.checked_add(size % 2)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back() {
        let wav = from_pcm(&[1, 0, 2, 0], 24_000);
        assert_eq!(wav.len(), 48);
        assert_eq!(pcm_of(&wav), Some((24_000, &[1u8, 0, 2, 0][..])));
        assert_eq!(pcm_of(b"not a wav file at all"), None);
    }

    #[test]
    fn an_oversized_data_chunk_is_cut_at_the_end_of_the_file() {
        let mut wav = from_pcm(&[7, 0], 16_000);
        wav[40..44].copy_from_slice(&0x7fff_f000u32.to_le_bytes());
        assert_eq!(pcm_of(&wav), Some((16_000, &[7u8, 0][..])));
    }
}
