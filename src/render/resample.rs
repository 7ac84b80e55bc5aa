//! Streaming sample-rate conversion: rubato's synchronous FFT resampler
//! (band-limited, BlackmanHarris2 window), fed fixed-size chunks, its delay
//! trimmed at the start and its tail flushed at the end so that the output is
//! time-aligned with the input and exactly `round(frames × out / in)` long.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler as _};

use super::RenderError;

/// Input frames per FFT chunk (rounded up by rubato to a multiple of the
/// rates' smallest block): the filter is about as long, and the delay is
/// half a chunk (≈ 21 ms at 24 kHz).
const CHUNK: usize = 1024;

/// Mono i16 in, f32 (full scale ±1.0) out at the output rate.
pub(crate) struct Resampler {
    input_rate: u32,
    output_rate: u32,
    /// `None` when the rates are equal: samples pass through.
    fft: Option<Fft<f32>>,
    /// Pending input, shorter than a chunk between calls.
    pending: Vec<f32>,
    chunk_in: usize,
    /// One chunk of output.
    produced: Vec<f32>,
    /// Output frames of delay still to drop.
    to_trim: usize,
    /// Input frames taken so far.
    input_frames: u64,
    /// Output frames given so far (after trimming).
    output_frames: u64,
}

impl Resampler {
    pub(crate) fn new(input_rate: u32, output_rate: u32) -> Result<Self, RenderError> {
        if input_rate == 0 || output_rate == 0 {
            return Err(RenderError::Spec(format!(
                "sample rates must be positive ({input_rate} Hz → {output_rate} Hz)"
            )));
        }
        let fft = if input_rate == output_rate {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    input_rate as usize,
                    output_rate as usize,
                    CHUNK,
                    1,
                    FixedSync::Both,
                )
                .map_err(|e| RenderError::Resample(e.to_string()))?,
            )
        };
        let (chunk_in, chunk_out, delay) = match &fft {
            Some(f) => (
                f.input_frames_next(),
                f.output_frames_next(),
                f.output_delay(),
            ),
            None => (0, 0, 0),
        };
        Ok(Resampler {
            input_rate,
            output_rate,
            fft,
            pending: Vec::with_capacity(chunk_in),
            chunk_in,
            produced: vec![0.0; chunk_out],
            to_trim: delay,
            input_frames: 0,
            output_frames: 0,
        })
    }

    /// Output frames `input_frames` input frames become: `round(n × out / in)`.
    pub(crate) fn output_len(input_frames: u64, input_rate: u32, output_rate: u32) -> u64 {
        if input_rate == 0 {
            return 0;
        }
        let n = u128::from(input_frames) * u128::from(output_rate);
        let d = u128::from(input_rate);
        u64::try_from((n + d / 2) / d).unwrap_or(u64::MAX)
    }

    /// Resamples `pcm`, appending what is ready to `out`.
    pub(crate) fn push(&mut self, pcm: &[i16], out: &mut Vec<f32>) -> Result<(), RenderError> {
        self.input_frames += pcm.len() as u64;
        if self.fft.is_none() {
            out.extend(pcm.iter().map(|&s| f32::from(s) / 32768.0));
            self.output_frames += pcm.len() as u64;
            return Ok(());
        }
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (self.chunk_in - self.pending.len()).min(rest.len());
            self.pending
                .extend(rest[..take].iter().map(|&s| f32::from(s) / 32768.0));
            rest = &rest[take..];
            if self.pending.len() == self.chunk_in {
                self.run(None, out, u64::MAX)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Flushes the pending input and the resampler's tail: afterwards exactly
    /// `output_len(input frames pushed)` frames have been given.
    pub(crate) fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), RenderError> {
        let total = Self::output_len(self.input_frames, self.input_rate, self.output_rate);
        if self.fft.is_none() {
            return Ok(());
        }
        // The last partial chunk (padded with silence by rubato), then
        // silence until the delayed tail is out.
        let mut partial = Some(self.pending.len());
        while self.output_frames < total {
            self.run(partial, out, total)?;
            self.pending.clear();
            partial = Some(0);
        }
        Ok(())
    }

    /// Processes one chunk (`partial`: how many pending frames are real),
    /// dropping the delay and anything past `limit` output frames.
    fn run(
        &mut self,
        partial: Option<usize>,
        out: &mut Vec<f32>,
        limit: u64,
    ) -> Result<(), RenderError> {
        let Some(fft) = self.fft.as_mut() else {
            return Ok(());
        };
        let frames_in = partial.unwrap_or(self.chunk_in).max(1);
        // rubato reads `partial_len` frames; the slice must hold at least that.
        if self.pending.len() < frames_in {
            self.pending.resize(frames_in, 0.0);
        }
        let input = InterleavedSlice::new(&self.pending, 1, self.pending.len())
            .map_err(|e| RenderError::Resample(e.to_string()))?;
        let frames_out = self.produced.len();
        let mut output = InterleavedSlice::new_mut(&mut self.produced, 1, frames_out)
            .map_err(|e| RenderError::Resample(e.to_string()))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, written) = fft
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| RenderError::Resample(e.to_string()))?;
        let skip = self.to_trim.min(written);
        self.to_trim -= skip;
        let room = limit.saturating_sub(self.output_frames);
        let give = (written - skip).min(usize::try_from(room).unwrap_or(usize::MAX));
        out.extend_from_slice(&self.produced[skip..skip + give]);
        self.output_frames += give as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(freq: f64, rate: u32, seconds: f64, amplitude: f64) -> Vec<i16> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| (amplitude * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    fn resample_all(pcm: &[i16], from: u32, to: u32) -> Vec<f32> {
        let mut r = Resampler::new(from, to).expect("resampler");
        let mut out = Vec::new();
        // Odd-sized pushes.
        for chunk in pcm.chunks(777) {
            r.push(chunk, &mut out).expect("push");
        }
        r.finish(&mut out).expect("finish");
        out
    }

    /// Upward zero crossings per second, over the steady part.
    fn frequency(signal: &[f32], rate: u32) -> f64 {
        let start = signal.len() / 10;
        let end = signal.len() - signal.len() / 10;
        let crossings = signal[start..end]
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        crossings as f64 * f64::from(rate) / (end - start) as f64
    }

    /// Energy at `freq` (Goertzel-like correlation), normalised per sample.
    fn energy_at(signal: &[f32], rate: u32, freq: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in signal.iter().enumerate() {
            let phase = 2.0 * PI * freq * i as f64 / f64::from(rate);
            re += f64::from(s) * phase.cos();
            im += f64::from(s) * phase.sin();
        }
        (re * re + im * im) / (signal.len() as f64).powi(2)
    }

    #[test]
    fn exact_length_for_every_rate_and_length() {
        for &to in &[8_000, 11_025, 16_000, 22_050, 24_000, 44_100, 48_000] {
            for &n in &[0usize, 1, 5, 1023, 1024, 1025, 24_000, 70_001] {
                let pcm = vec![1000i16; n];
                let out = resample_all(&pcm, 24_000, to);
                assert_eq!(
                    out.len() as u64,
                    Resampler::output_len(n as u64, 24_000, to),
                    "{n} frames to {to} Hz"
                );
            }
        }
    }

    #[test]
    fn a_sine_keeps_its_frequency() {
        let pcm = sine(1000.0, 24_000, 2.0, 12_000.0);
        for &to in &[16_000, 48_000, 44_100, 8_000] {
            let out = resample_all(&pcm, 24_000, to);
            let f = frequency(&out, to);
            assert!((f - 1000.0).abs() < 1.0, "{to} Hz: {f} Hz");
            // and its level (in the pass band)
            let rms = (out[out.len() / 4..out.len() * 3 / 4]
                .iter()
                .map(|&s| f64::from(s).powi(2))
                .sum::<f64>()
                / (out.len() / 2) as f64)
                .sqrt();
            let expected = 12_000.0 / 32768.0 / 2f64.sqrt();
            assert!((rms / expected - 1.0).abs() < 0.01, "{to} Hz: rms {rms}");
        }
    }

    #[test]
    fn an_onset_stays_in_place() {
        // Silence, then a step of a 500 Hz tone at exactly 1.000 s.
        let mut pcm = vec![0i16; 24_000];
        pcm.extend(sine(500.0, 24_000, 1.0, 16_000.0));
        for &to in &[8_000u32, 16_000, 44_100, 48_000] {
            let out = resample_all(&pcm, 24_000, to);
            // The first sample above 10 % of the tone's amplitude.
            let threshold = 0.1 * 16_000.0 / 32768.0;
            let onset = out.iter().position(|s| s.abs() > threshold).expect("onset");
            let error_ms = (onset as f64 / f64::from(to) - 1.0) * 1000.0;
            assert!(error_ms.abs() <= 1.0, "{to} Hz: onset off by {error_ms} ms");
        }
    }

    #[test]
    fn downsampling_removes_what_would_alias() {
        // 6 kHz cannot exist at 8 kHz: it would fold to 2 kHz.
        let pcm = sine(6000.0, 24_000, 1.0, 16_000.0);
        let out = resample_all(&pcm, 24_000, 8_000);
        let alias = energy_at(&out[800..out.len() - 800], 8_000, 2000.0);
        // Baseline: linear interpolation (here plain decimation, 24k/8k = 3).
        let naive: Vec<f32> = pcm
            .iter()
            .step_by(3)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let naive_alias = energy_at(&naive[800..naive.len() - 800], 8_000, 2000.0);
        assert!(
            naive_alias > 0.01,
            "the baseline aliases (energy {naive_alias})"
        );
        assert!(
            alias < naive_alias * 1e-6,
            "alias energy {alias} vs naive {naive_alias}"
        );
    }
}
