//! A look-ahead true-peak limiter: after the loudness gain, it lowers the
//! gain just around the few peaks that would pass the true-peak ceiling, so
//! a peaky programme (close-miked speech) reaches its loudness target instead
//! of being held down as a whole by its loudest transient.
//!
//! Written here rather than taken from a crate: the one maintained
//! true-peak limiter crate (`truepeak` 0.1) needs a newer Rust than the
//! project's and takes only rates from 44.1 kHz, while deliverables are
//! rendered at 8–48 kHz; the general DSP crates offer sample-peak limiters,
//! which let inter-sample peaks through.
//!
//! How it works, per sample, in a streaming pass of bounded memory:
//! 1. True-peak detection: the signal is oversampled to at least 192 kHz
//!    (4× at 48 kHz, 8× at 24 kHz: what ffmpeg's `ebur128` meter reads; a
//!    Kaiser-windowed sinc interpolator, [`HALF`] taps each side) and each
//!    sample's peak is the largest of it and the points after it.
//! 2. Each sample needs at most `ceiling / peak` of gain. The gain applied
//!    at a sample is the average, over the look-ahead window before it, of
//!    the smallest need within the look-ahead window after each point: it is
//!    never above the need at that sample (every average term is a minimum
//!    over a window that contains it), and it ramps down over the look-ahead
//!    instead of jumping (no click).
//! 3. Release: the gain rises back at [`RELEASE_DB_PER_SECOND`], never
//!    above the ramp, and is exactly 1 again once the peak has passed.
//!
//! The output lags the input by [`Limiter::latency`] samples, given out by
//! [`Limiter::finish`]: as many samples come out as went in, the first
//! output sample being the first input's, so the programme keeps its length
//! and timeline.

use std::collections::VecDeque;

/// Interpolator taps on each side of the interpolated point: enough for a
/// flat response close to Nyquist, where sibilants and plosives put energy
/// that a short interpolator would miss (and a meter like ffmpeg's sees).
const HALF: usize = 16;
/// Rate the peak detection oversamples to, at least (as ffmpeg's meter).
const DETECTION_RATE: u32 = 192_000;
/// Oversampling factors used, at least and at most.
const MIN_OVERSAMPLING: usize = 4;
const MAX_OVERSAMPLING: usize = 24;
/// Look-ahead: how long the gain takes to come down before a peak.
const LOOKAHEAD_SECONDS: f64 = 0.005;
/// How fast the gain returns after a peak: 10 dB of limiting is gone in
/// 83 ms.
const RELEASE_DB_PER_SECOND: f64 = 120.0;
/// Kept under the ceiling for what the interpolation does not see between
/// its points and for 16-bit rounding.
const SAFETY_DB: f64 = 0.2;
/// Kaiser window's shape parameter for the interpolator.
const KAISER_BETA: f64 = 8.0;

/// A streaming look-ahead true-peak limiter of mono `f32` samples (1.0 is
/// full scale).
pub struct Limiter {
    ceiling: f32,
    lookahead: usize,
    release: f32,
    /// The true peak of each sample, `HALF` samples late.
    peaks: Oversampler,
    /// Samples not yet given out, oldest first.
    delayed: VecDeque<f32>,
    /// Indices and needed gains, increasing: the sliding minimum.
    needs: VecDeque<(u64, f32)>,
    /// The last `lookahead + 1` window minima and their sum.
    minima: VecDeque<f32>,
    minima_sum: f64,
    /// Samples taken in (priming zeros included).
    taken: u64,
    gain: f32,
    /// Samples whose gain was lowered.
    limited: u64,
}

impl Limiter {
    /// A limiter holding the true peak under `ceiling_db` (dBTP) at `rate`.
    pub fn new(rate: u32, ceiling_db: f64) -> Limiter {
        let lookahead = ((LOOKAHEAD_SECONDS * f64::from(rate)).round() as usize).max(1);
        let release = 10f64.powf(RELEASE_DB_PER_SECOND / 20.0 / f64::from(rate));
        let mut limiter = Limiter {
            ceiling: 10f64.powf((ceiling_db - SAFETY_DB) / 20.0) as f32,
            lookahead,
            release: release as f32,
            peaks: Oversampler::new(rate),
            delayed: VecDeque::with_capacity(lookahead + HALF + 2),
            needs: VecDeque::with_capacity(lookahead + 2),
            minima: VecDeque::with_capacity(lookahead + 2),
            minima_sum: 0.0,
            taken: 0,
            gain: 1.0,
            limited: 0,
        };
        // Silence before the programme: the first real sample's ramp has
        // a full look-ahead window behind it.
        let mut none = Vec::new();
        for _ in 0..lookahead {
            limiter.step(0.0, &mut none);
        }
        limiter
    }

    /// Samples by which the output lags the input.
    pub fn latency(&self) -> usize {
        self.lookahead + HALF
    }

    /// Samples whose gain the limiter lowered so far.
    pub fn limited(&self) -> u64 {
        self.limited
    }

    /// Takes `input` and appends to `out` the samples that are complete.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        for &x in input {
            self.step(x, out);
        }
    }

    /// Gives out what is still held (followed by silence).
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        for _ in 0..self.latency() {
            self.step(0.0, out);
        }
    }

    fn step(&mut self, x: f32, out: &mut Vec<f32>) {
        let n = self.taken;
        self.taken += 1;
        self.delayed.push_back(x);
        self.peaks.push(x, self.ceiling);
        if n < HALF as u64 {
            return;
        }
        // The sample at k has its 2 × HALF neighbours: its true peak.
        let k = n - HALF as u64;
        let need = match self.peaks.centre_peak() {
            p if p > self.ceiling => self.ceiling / p,
            _ => 1.0,
        };
        while self.needs.back().is_some_and(|&(_, g)| g >= need) {
            self.needs.pop_back();
        }
        self.needs.push_back((k, need));
        let lookahead = self.lookahead as u64;
        if k < lookahead {
            return;
        }
        // The smallest need over [j, j + lookahead].
        let j = k - lookahead;
        while self.needs.front().is_some_and(|&(i, _)| i < j) {
            self.needs.pop_front();
        }
        let minimum = self.needs.front().map_or(1.0, |&(_, g)| g);
        self.minima.push_back(minimum);
        self.minima_sum += f64::from(minimum);
        if self.minima.len() > self.lookahead + 1 {
            if let Some(old) = self.minima.pop_front() {
                self.minima_sum -= f64::from(old);
            }
        } else if self.minima.len() <= self.lookahead {
            // Not a full window yet (only during priming): nothing out.
            self.delayed.pop_front();
            return;
        }
        let ramp = (self.minima_sum / (self.lookahead + 1) as f64) as f32;
        self.gain = ramp.min(self.gain * self.release);
        if self.gain < 1.0 {
            self.limited += 1;
        }
        if let Some(sample) = self.delayed.pop_front() {
            out.push(sample * self.gain);
        }
    }
}

/// A `factor`× oversampling view of a stream (at least [`DETECTION_RATE`]):
/// the true peak around each sample.
#[derive(Clone)]
struct Oversampler {
    /// `phases[φ − 1][t]`: coefficient of `x[k − HALF + 1 + t]` for the
    /// point `k + φ / factor`.
    phases: Vec<[f32; 2 * HALF]>,
    /// The largest sum of absolute coefficients of a phase: no interpolated
    /// point exceeds it times the window's largest sample.
    reach: f32,
    /// The last `2 × HALF` samples, written twice (at `i` and `i + 2 ×
    /// HALF`) so that they are always one slice, oldest first, from `at`.
    ring: [f32; 4 * HALF],
    at: usize,
    /// Samples taken, and the count until which the window holds one that
    /// could take an interpolated point past the floor it was taken with.
    taken: u64,
    loud_until: u64,
}

impl Oversampler {
    fn new(rate: u32) -> Oversampler {
        let factor = (DETECTION_RATE.div_ceil(rate.max(1)) as usize)
            .clamp(MIN_OVERSAMPLING, MAX_OVERSAMPLING);
        let phases = interpolator(factor);
        let reach = phases
            .iter()
            .map(|p| p.iter().map(|h| h.abs()).sum::<f32>())
            .fold(1.0, f32::max);
        Oversampler {
            phases,
            reach,
            ring: [0.0; 4 * HALF],
            at: 0,
            taken: 0,
            loud_until: 0,
        }
    }

    /// Takes `x`; `floor` is the level under which a peak does not matter
    /// (the ceiling, or the highest peak so far): most samples are far
    /// under it, and their neighbourhood cannot reach it, whatever lies
    /// between the samples, so no interpolation is done for them.
    fn push(&mut self, x: f32, floor: f32) {
        self.ring[self.at] = x;
        self.ring[self.at + 2 * HALF] = x;
        self.at = (self.at + 1) % (2 * HALF);
        self.taken += 1;
        if x.abs() * self.reach > floor {
            self.loud_until = self.taken + 2 * HALF as u64;
        }
    }

    /// True peak of the sample at the window's centre (`HALF` samples
    /// ago): it and the interpolated points after it; only the sample's
    /// own level when nothing in the window could pass the floor.
    fn centre_peak(&self) -> f32 {
        let window = &self.ring[self.at..self.at + 2 * HALF];
        let centre = window[HALF - 1].abs();
        if self.taken >= self.loud_until {
            return centre;
        }
        let mut peak = centre;
        for phase in &self.phases {
            let v: f32 = phase.iter().zip(window).map(|(h, x)| h * x).sum();
            peak = peak.max(v.abs());
        }
        peak
    }
}

/// The highest true peak of a stream, read as the limiter reads it (and as
/// ffmpeg's `ebur128` does: oversampled to at least 192 kHz).
pub struct PeakMeter {
    samples: Oversampler,
    peak: f32,
}

impl PeakMeter {
    pub fn new(rate: u32) -> PeakMeter {
        PeakMeter {
            samples: Oversampler::new(rate),
            peak: 0.0,
        }
    }

    pub fn add(&mut self, samples: impl IntoIterator<Item = f32>) {
        for x in samples {
            self.samples.push(x, self.peak);
            self.peak = self.peak.max(self.samples.centre_peak());
        }
    }

    /// The peak (linear, 1.0 is full scale), the stream's last samples
    /// included.
    pub fn peak(&self) -> f32 {
        let mut rest = self.samples.clone();
        let mut peak = self.peak;
        for _ in 0..HALF {
            rest.push(0.0, peak);
            peak = peak.max(rest.centre_peak());
        }
        peak
    }
}

/// The fractional phases of a `factor`× Kaiser-windowed sinc interpolator.
fn interpolator(factor: usize) -> Vec<[f32; 2 * HALF]> {
    let mut phases = vec![[0.0f32; 2 * HALF]; factor - 1];
    let half = HALF as f64;
    for (p, phase) in phases.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / factor as f64;
        let mut sum = 0.0;
        for (t, h) in phase.iter_mut().enumerate() {
            // Sample k − HALF + 1 + t, at distance d from the point k + frac.
            let d = (t as f64 - half + 1.0) - frac;
            let sinc = if d == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * d).sin() / (std::f64::consts::PI * d)
            };
            let r = d / half;
            let w = if r.abs() >= 1.0 {
                0.0
            } else {
                bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / bessel_i0(KAISER_BETA)
            };
            *h = (sinc * w) as f32;
            sum += sinc * w;
        }
        // Unity gain at DC.
        for h in phase.iter_mut() {
            *h = (f64::from(*h) / sum) as f32;
        }
    }
    phases
}

/// The zeroth-order modified Bessel function of the first kind (series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limiter: &mut Limiter, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        for chunk in input.chunks(777) {
            limiter.push(chunk, &mut out);
        }
        limiter.finish(&mut out);
        out
    }

    #[test]
    fn quiet_audio_passes_unchanged_and_in_time() {
        let input: Vec<f32> = (0..5000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        let mut limiter = Limiter::new(24_000, -1.0);
        let out = run(&mut limiter, &input);
        assert_eq!(out.len(), input.len());
        assert_eq!(out, input);
        assert_eq!(limiter.limited(), 0);
    }

    #[test]
    fn a_peak_is_shaved_to_the_ceiling_and_the_rest_kept() {
        // A steady tone at −12 dBFS with one burst at +6 dBFS.
        let rate = 16_000;
        let input: Vec<f32> = (0..16_000)
            .map(|i| {
                let level = if (8000..8400).contains(&i) { 2.0 } else { 0.25 };
                level * (i as f32 * 0.3).sin()
            })
            .collect();
        let mut limiter = Limiter::new(rate, -1.0);
        let out = run(&mut limiter, &input);
        assert_eq!(out.len(), input.len());
        let ceiling = 10f32.powf(-1.0 / 20.0);
        let peak = out.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak <= ceiling, "peak {peak} over {ceiling}");
        // Far from the burst (past the release), the tone is untouched.
        for i in (0..7000).chain(12_000..16_000) {
            assert!((out[i] - input[i]).abs() < 1e-4, "sample {i} changed");
        }
        // The burst itself is kept loud: limited, not muted.
        let burst = out[8100..8300].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(burst > 0.8 * ceiling, "burst at {burst}");
    }

    #[test]
    fn inter_sample_peaks_are_caught() {
        // A tone at a quarter of the rate, phased so that every sample sits
        // 3 dB under the waveform's crest: sample peak 0.707, true peak 1.
        let input: Vec<f32> = (0..8000)
            .map(|i| (std::f32::consts::FRAC_PI_2 * i as f32 + std::f32::consts::FRAC_PI_4).sin())
            .collect();
        let mut limiter = Limiter::new(48_000, -6.0);
        let out = run(&mut limiter, &input);
        // Sample peak under −6 dB would allow 0.501 per sample; the true
        // peak (√2 × sample) must stay under it too.
        let sample_peak = out[1000..7000].iter().fold(0f32, |m, s| m.max(s.abs()));
        let true_peak = sample_peak * std::f32::consts::SQRT_2;
        assert!(
            true_peak <= 10f32.powf(-6.0 / 20.0) * 1.01,
            "true peak {true_peak}"
        );
    }
}
