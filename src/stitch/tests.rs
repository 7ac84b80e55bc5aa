use super::*;
use crate::pcm::{WavError, parse_wav, speech_bounds, wav_header};

const F: PcmFormat = PcmFormat::GEMINI;

fn pcm(segments: &[(f64, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(seconds, tone) in segments {
        let n = (seconds * 24_000.0) as usize;
        for i in 0..n {
            let s = if tone {
                ((i as f64 * 0.05).sin() * 8000.0) as i16
            } else {
                0
            };
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

#[test]
fn a_header_written_for_a_format_reads_back_as_that_format() {
    let mut file = wav_header(F, 48_000).unwrap().to_vec();
    file.extend(vec![0u8; 48_000]);
    let wav = parse_wav(&file).unwrap();
    assert_eq!(wav.format, F);
    assert_eq!(wav.data, 44..48_044);
    // A header announcing more than the file holds is clipped to whole frames.
    file.truncate(1_001);
    assert_eq!(parse_wav(&file).unwrap().data, 44..1_000);
}

#[test]
fn only_16_bit_pcm_wav_is_accepted() {
    let mut file = wav_header(F, 0).unwrap().to_vec();
    file[34] = 24;
    assert_eq!(
        parse_wav(&file),
        Err(WavError::NotPcm16 {
            format: 1,
            bits: 24
        })
    );
    assert_eq!(parse_wav(b"ID3\x04 not a wav"), Err(WavError::NotWav));
    let header_only = &wav_header(F, 0).unwrap()[..36];
    assert_eq!(parse_wav(header_only), Err(WavError::NoData));
}

#[test]
fn silence_around_speech_is_trimmed_to_a_small_margin() {
    let audio = pcm(&[(0.5, false), (1.0, true), (0.3, false)]);
    let s = speech_bounds(&audio, F);
    assert_eq!(s.total, 43_200);
    // Speech spans 12,000..36,000; 40 ms (960 frames) of margin each side,
    // rounded to the 10 ms window the speech starts or ends in.
    assert!((10_900..=11_100).contains(&s.kept.start), "{:?}", s.kept);
    assert!((36_900..=37_300).contains(&s.kept.end), "{:?}", s.kept);
    assert!((s.voiced_share() - 1.0 / 1.8).abs() < 0.02);
}

#[test]
fn audio_without_speech_keeps_nothing() {
    let s = speech_bounds(&pcm(&[(2.0, false)]), F);
    assert_eq!(s.kept, 0..0);
    assert_eq!(s.voiced_share(), 0.0);
    assert_eq!(speech_bounds(&[], F).kept, 0..0);
}

#[test]
fn a_paragraph_pauses_longer_than_a_sentence_which_pauses_longer_than_a_clause() {
    assert!(pause_after(Join::Paragraph) > pause_after(Join::Sentence));
    assert!(pause_after(Join::Sentence) > pause_after(Join::Within));
    assert!(pause_after(Join::Within) > Duration::ZERO);
    assert_eq!(pause_after(Join::End), Duration::ZERO);
}

#[test]
fn the_layout_places_parts_end_to_end_with_their_pauses() {
    let l = layout(
        F,
        &[
            (24_000, Join::Sentence),
            (48_000, Join::Paragraph),
            (12_000, Join::End),
        ],
    );
    // 400 and 800 ms between speech, 40 ms of each side's margin included.
    let pauses = [7_680, 17_280, 0];
    assert_eq!(l.parts[0].start, 0);
    assert_eq!(l.parts[0].end, 24_000);
    assert_eq!(l.parts[1].start, 24_000 + pauses[0]);
    assert_eq!(l.parts[2].start, l.parts[1].end + pauses[1]);
    assert_eq!(l.frames, 84_000 + pauses.iter().sum::<u64>());
    // The third part starts 4.04 s in (at 24 kHz).
    assert_eq!(l.parts[2].start * 1_000 / u64::from(F.sample_rate), 4_040);
}
